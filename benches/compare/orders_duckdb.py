"""The orders pipeline in DuckDB, for the side-by-side comparison.

Same logical work as pipelines/orders.yaml: read NDJSON lines, reject
invalid ones (not JSON, not UTF-8, over 1 MiB, nested 64+ deep, every
JSON Schema constraint of OrderCreated v1 except `additionalProperties`,
the `not_in_future` rule) to a dead-letter file with a reason, send
implausible totals and unknown customers to review, shape the columns as
the transform does, join the customers table, and write Parquet (zstd)
partitioned by event_date.

usage: orders_duckdb.py INPUT CUSTOMERS OUT_DIR  → prints {"out","dlq","review"} as JSON
"""

import json
import sys

import duckdb

UUID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
SHAPE = json.dumps({
    "event_id": "VARCHAR", "event_type": "VARCHAR", "occurred_at": "VARCHAR",
    "order_id": "VARCHAR", "customer_id": "VARCHAR", "currency": "VARCHAR",
    "channel": "VARCHAR", "total": "VARCHAR",
    "items": [{"sku": "VARCHAR", "qty": "VARCHAR", "unit_price": "VARCHAR"}],
    "shipping": {"country": "VARCHAR", "postal_code": "VARCHAR"},
})


def main(source, customers, out):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"""
        CREATE TEMP TABLE customers AS
        SELECT customer_id, segment, region FROM read_csv('{customers}', header = true)
    """)
    # Invalid UTF-8 lines land in reject_errors (store_rejects), with their text.
    con.execute(f"""
        CREATE TEMP TABLE parsed AS
        WITH lines AS (
            SELECT line FROM read_csv('{source}', columns = {{'line': 'VARCHAR'}}, header = false,
                delim = E'\\x1f', quote = '', escape = '', auto_detect = false,
                max_line_size = 20000000, store_rejects = true)
        ), decoded AS (
            SELECT line, strlen(line) AS bytes, json_valid(line) AS is_json,
                CASE WHEN json_valid(line) AND strlen(line) <= 1048576
                     THEN json_transform(line, '{SHAPE}') END AS j
            FROM lines
        ), typed AS (
            SELECT *, try_cast(j.occurred_at AS TIMESTAMPTZ) AS occurred_at,
                try_cast(j.total AS DOUBLE) AS total,
                list_transform(j.items, lambda i: {{'sku': i.sku, 'qty': try_cast(i.qty AS BIGINT),
                    'unit_price': try_cast(i.unit_price AS DOUBLE)}}) AS items
            FROM decoded
        )
        SELECT *, CASE
            WHEN NOT is_json THEN 'json'
            WHEN bytes > 1048576 THEN 'size'
            WHEN regexp_matches(line, '[\\[{{]{{64}}') THEN 'depth'
            WHEN j.event_id IS NULL OR j.event_type IS NULL OR j.occurred_at IS NULL
                OR j.order_id IS NULL OR j.customer_id IS NULL OR j.currency IS NULL
                OR j.channel IS NULL OR j.items IS NULL OR j.total IS NULL THEN 'required'
            WHEN list_bool_or(list_transform(j.items, lambda i: i.sku IS NULL OR i.qty IS NULL OR i.unit_price IS NULL))
                THEN 'required'
            WHEN total IS NULL OR list_bool_or(list_transform(items, lambda i: i.qty IS NULL OR i.unit_price IS NULL))
                THEN 'type'
            WHEN j.event_type <> 'OrderCreated' THEN 'const'
            WHEN occurred_at IS NULL OR NOT regexp_full_match(j.event_id, '{UUID}')
                OR NOT regexp_full_match(j.order_id, '{UUID}') THEN 'format'
            WHEN NOT regexp_full_match(j.customer_id, '^C[0-9]{{6}}$')
                OR list_bool_or(list_transform(items, lambda i: NOT regexp_full_match(i.sku, '^SKU-[0-9]{{5}}$')))
                THEN 'pattern'
            WHEN j.currency NOT IN ('USD','EUR','GBP','JPY','CAD','usd','eur','gbp','jpy','cad')
                OR j.channel NOT IN ('web','mobile','store') THEN 'enum'
            WHEN len(items) NOT BETWEEN 1 AND 5 THEN 'items'
            WHEN total < 0 OR list_bool_or(list_transform(items, lambda i: i.qty < 1 OR i.unit_price < 0))
                THEN 'minimum'
            WHEN j.shipping IS NOT NULL AND (j.shipping.country IS NULL
                OR NOT regexp_full_match(j.shipping.country, '^[A-Z]{{2}}$')
                OR length(j.shipping.postal_code) > 16) THEN 'shipping'
            WHEN occurred_at > now() + INTERVAL 1 DAY THEN 'not_in_future'
        END AS reason
        FROM typed
    """)
    con.execute(f"""
        CREATE TEMP TABLE shaped AS
        SELECT j.event_id AS event_id, j.event_type AS event_type, occurred_at,
            CAST(occurred_at AS DATE) AS event_date, j.order_id AS order_id,
            p.customer_id AS customer_id, upper(j.currency) AS currency, j.channel AS channel,
            CAST(list_sum(list_transform(items, lambda i: i.qty)) AS BIGINT) AS item_count, total,
            CAST(round(total * 100) AS BIGINT) AS total_cents, j.shipping.country AS ship_country,
            c.segment, c.region, total > 500 AS is_high_value,
            CASE WHEN total >= 50000 THEN 'plausible_total' WHEN c.customer_id IS NULL THEN 'customers' END AS review,
            line
        FROM (SELECT *, j.customer_id AS customer_id FROM parsed WHERE reason IS NULL) p
        LEFT JOIN customers c ON c.customer_id = p.customer_id
    """)
    con.execute(f"""
        COPY (SELECT * EXCLUDE (review, line) FROM shaped WHERE review IS NULL)
        TO '{out}/orders' (FORMAT PARQUET, COMPRESSION ZSTD, PARTITION_BY (event_date))
    """)
    con.execute(f"""
        COPY (SELECT line, reason FROM parsed WHERE reason IS NOT NULL
              UNION ALL SELECT csv_line, 'utf8' FROM reject_errors)
        TO '{out}/dlq.ndjson' (FORMAT JSON)
    """)
    con.execute(f"COPY (SELECT line, review AS reason FROM shaped WHERE review IS NOT NULL) TO '{out}/review.ndjson' (FORMAT JSON)")
    count = lambda sql: con.execute(sql).fetchone()[0]
    print(json.dumps({
        "out": count("SELECT count(*) FROM shaped WHERE review IS NULL"),
        "dlq": count("SELECT count(*) FROM parsed WHERE reason IS NOT NULL")
        + count("SELECT count(*) FROM reject_errors"),
        "review": count("SELECT count(*) FROM shaped WHERE review IS NOT NULL"),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:4])
