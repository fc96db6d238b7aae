-- API keys identify applications. Only a key's SHA-256 is kept; its first
-- characters are kept too, so that people can tell their keys apart.
CREATE TABLE api_keys (
    id               uuid PRIMARY KEY,
    name             text NOT NULL,
    prefix           text NOT NULL,
    hash             bytea NOT NULL UNIQUE,
    limit_per_minute integer NOT NULL CHECK (limit_per_minute > 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz
);
