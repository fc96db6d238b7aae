-- Users: the email is unique whatever its case; `number` is the short public
-- id events carry (U00000001); secrets of the second factor are sealed.
CREATE TABLE users (
    id              uuid PRIMARY KEY,
    number          bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    email           text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    password_hash   text,
    roles           text[] NOT NULL DEFAULT '{customer}',
    permissions     text[] NOT NULL DEFAULT '{}',
    mfa_secret      bytea,
    mfa_enabled     boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Signing keys: the private half sealed. A key is published from
-- `created_at`, signs from `signs_from`, and leaves the JWKS at `retire_at`
-- (set when a successor is made: its `signs_from` plus the longest token
-- lifetime).
CREATE TABLE signing_keys (
    kid          text PRIMARY KEY,
    algorithm    text NOT NULL,
    public_jwk   jsonb NOT NULL,
    private_key  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    signs_from   timestamptz NOT NULL,
    retire_at    timestamptz
);

-- Every login, failure, lockout, token reuse and admin action.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    action      text NOT NULL,
    outcome     text NOT NULL,
    user_id     uuid,
    actor_id    uuid,
    email       text,
    ip          text,
    user_agent  text,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_user ON audit_log (user_id, at);
CREATE INDEX audit_log_at ON audit_log (at);
