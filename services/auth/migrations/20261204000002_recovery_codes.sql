-- Single-use recovery codes for the second factor, stored as SHA-256
-- digests (they are random, so a fast digest is enough). Using one sets
-- `used_at` in the same statement that finds it: it cannot be used twice.
CREATE TABLE recovery_codes (
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    used_at     timestamptz,
    PRIMARY KEY (user_id, code_hash)
);
