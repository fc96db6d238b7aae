-- Password reset tokens, stored as SHA-256 digests (they are random, so a
-- fast digest is enough). Using one sets `used_at` in the statement that
-- finds it, so it works once; a new password spends every other one.
CREATE TABLE password_resets (
    token_hash  text PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX password_resets_user ON password_resets (user_id, created_at);

-- What must leave the service once its transaction commits: domain events
-- for Kafka (`destination = 'kafka'`, `topic`, `key`) and mail for SMTP
-- (`destination = 'smtp'`, the message sealed: a reset mail carries a live
-- token). A relay per destination delivers in `id` order and deletes what
-- was delivered; failures wait `next_attempt_at`.
CREATE TABLE outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination      text NOT NULL CHECK (destination IN ('kafka', 'smtp')),
    topic            text,
    key              text,
    payload          bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text
);
CREATE INDEX outbox_due ON outbox (destination, next_attempt_at, id);
