-- The orders service's tables. Money is in minor units of its currency
-- (cents; yen for JPY), never floating point.

-- Customers as the event schemas number them (`C000042`), one per user of
-- the auth service; the segment is what pricing rules see.
CREATE TABLE customers (
    number     bigserial PRIMARY KEY CHECK (number BETWEEN 1 AND 999999),
    user_id    text NOT NULL UNIQUE,
    segment    text NOT NULL DEFAULT 'standard',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    sku        text PRIMARY KEY CHECK (sku ~ '^SKU-[0-9]{5}$'),
    name       text NOT NULL,
    stock      bigint NOT NULL CHECK (stock >= 0),
    -- Raised by every change; cache entries carry it.
    version    bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A product's price in each currency it is sold in.
CREATE TABLE product_prices (
    sku      text NOT NULL REFERENCES products ON DELETE CASCADE,
    currency text NOT NULL CHECK (currency IN ('USD', 'EUR', 'GBP', 'JPY', 'CAD')),
    amount   bigint NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (sku, currency)
);

CREATE TABLE orders (
    id              uuid PRIMARY KEY,
    user_id         text NOT NULL,
    customer_number bigint NOT NULL REFERENCES customers,
    status          text NOT NULL CHECK (status IN
        ('pending', 'reserved', 'paid', 'fulfilled', 'cancelled', 'payment_failed', 'refunded')),
    currency        text NOT NULL,
    channel         text NOT NULL,
    ship_country    text,
    ship_postal     text,
    coupon          text,
    subtotal        bigint NOT NULL,
    discount        bigint NOT NULL,
    tax             bigint NOT NULL,
    total           bigint NOT NULL CHECK (total >= 0),
    -- Which rules fired and what each changed, and the rules file's digest.
    pricing         jsonb NOT NULL,
    -- The payment: the provider's intent, our payment id, why it failed.
    payment_intent  text,
    payment_id      uuid,
    failure         text,
    -- The saga: who works on the order until when (a lease with a fencing
    -- token), how often it tried, when it tries next, when it gives up.
    lease_token     uuid,
    lease_until     timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    give_up_at      timestamptz NOT NULL,
    version         bigint NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The caller's own orders, newest first, by keyset.
CREATE INDEX orders_by_user ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_by_time ON orders (created_at DESC, id DESC);
-- What the saga worker looks for.
CREATE INDEX orders_in_flight ON orders (next_attempt_at) WHERE status IN ('pending', 'reserved');

CREATE TABLE order_lines (
    order_id   uuid NOT NULL REFERENCES orders ON DELETE CASCADE,
    line       integer NOT NULL,
    sku        text NOT NULL REFERENCES products,
    qty        integer NOT NULL CHECK (qty > 0),
    unit_price bigint NOT NULL CHECK (unit_price >= 0),
    discount   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (order_id, line)
);

-- Every change of state, for the record.
CREATE TABLE order_transitions (
    order_id    uuid NOT NULL REFERENCES orders ON DELETE CASCADE,
    seq         bigserial,
    from_status text NOT NULL,
    to_status   text NOT NULL,
    reason      text,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, seq)
);

-- Idempotency keys (per caller): the first request's fingerprint and, once
-- answered, its response; while in flight, a lease a crashed request
-- leaves to expire.
CREATE TABLE idempotency_keys (
    subject        text NOT NULL,
    key            text NOT NULL,
    fingerprint    bytea NOT NULL,
    status         smallint,
    content_type   text,
    location       text,
    body           bytea,
    in_flight_until timestamptz,
    lease          uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- The transactional outbox (tributary_kit::outbox).
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    destination     text NOT NULL,
    topic           text,
    key             text,
    payload         bytea NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_due ON outbox (destination, id);
CREATE INDEX outbox_keys ON outbox (destination, topic, key, id);
