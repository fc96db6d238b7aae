"""The orders pipeline in Polars, for the side-by-side comparison.

The same logical work as orders_duckdb.py and pipelines/orders.yaml (see
there). Lines are read as text (invalid UTF-8 replaced, then rejected as
`utf8`), JSON is checked per line before decoding, leaves are decoded as
text and cast non-strictly so a wrong type becomes a reject, not an error.

usage: orders_polars.py INPUT CUSTOMERS OUT_DIR  → prints {"out","dlq","review"} as JSON
"""

import json
import sys
from datetime import datetime, timedelta, timezone

import polars as pl

UUID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
S = pl.String
SHAPE = pl.Struct({
    "event_id": S, "event_type": S, "occurred_at": S, "order_id": S, "customer_id": S,
    "currency": S, "channel": S, "total": S,
    "items": pl.List(pl.Struct({"sku": S, "qty": S, "unit_price": S})),
    "shipping": pl.Struct({"country": S, "postal_code": S}),
})
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CAD", "usd", "eur", "gbp", "jpy", "cad"]


def any_item(expr):
    return pl.col("items").list.eval(expr).list.any().fill_null(False)


def main(source, customers, out):
    lines = pl.scan_csv(source, has_header=False, separator="\x1f", quote_char=None,
                        schema={"line": pl.String}, encoding="utf8-lossy")
    lines = lines.with_columns(
        bytes=pl.col("line").str.len_bytes(),
        utf8=pl.col("line").str.contains("\ufffd", literal=True),
        deep=pl.col("line").str.contains(r"[\[{]{64}"),
    ).with_columns(
        is_json=pl.when(pl.col("bytes") <= 1048576).then(
            pl.col("line").str.json_path_match("$").is_not_null()).otherwise(True),
    )
    decodable = pl.col("is_json") & ~pl.col("utf8") & (pl.col("bytes") <= 1048576) & ~pl.col("deep")
    now = datetime.now(timezone.utc) + timedelta(days=1)
    parsed = (
        lines.with_columns(
            j=pl.when(decodable).then(pl.col("line")).otherwise(None).str.json_decode(SHAPE))
        .unnest("j")
        .with_columns(
            ts=pl.col("occurred_at").str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", strict=False, time_zone="UTC"),
            total_v=pl.col("total").cast(pl.Float64, strict=False),
            items_v=pl.col("items").list.eval(pl.struct(
                sku=pl.element().struct.field("sku"),
                qty=pl.element().struct.field("qty").cast(pl.Int64, strict=False),
                unit_price=pl.element().struct.field("unit_price").cast(pl.Float64, strict=False))),
        )
    )
    item = pl.element().struct.field
    required = ["event_id", "event_type", "occurred_at", "order_id", "customer_id", "currency",
                "channel", "items", "total"]
    reason = (
        pl.when(pl.col("utf8")).then(pl.lit("utf8"))
        .when(~pl.col("is_json")).then(pl.lit("json"))
        .when(pl.col("bytes") > 1048576).then(pl.lit("size"))
        .when(pl.col("deep")).then(pl.lit("depth"))
        .when(pl.any_horizontal([pl.col(c).is_null() for c in required])).then(pl.lit("required"))
        .when(any_item(item("sku").is_null() | item("qty").is_null() | item("unit_price").is_null()))
        .then(pl.lit("required"))
        .when(pl.col("total_v").is_null()
              | pl.col("items_v").list.eval(item("qty").is_null() | item("unit_price").is_null()).list.any())
        .then(pl.lit("type"))
        .when(pl.col("event_type") != "OrderCreated").then(pl.lit("const"))
        .when(pl.col("ts").is_null() | ~pl.col("event_id").str.contains(UUID)
              | ~pl.col("order_id").str.contains(UUID)).then(pl.lit("format"))
        .when(~pl.col("customer_id").str.contains(r"^C[0-9]{6}$")
              | pl.col("items_v").list.eval(~item("sku").str.contains(r"^SKU-[0-9]{5}$")).list.any())
        .then(pl.lit("pattern"))
        .when(~pl.col("currency").is_in(CURRENCIES) | ~pl.col("channel").is_in(["web", "mobile", "store"]))
        .then(pl.lit("enum"))
        .when(~pl.col("items_v").list.len().is_between(1, 5)).then(pl.lit("items"))
        .when((pl.col("total_v") < 0)
              | pl.col("items_v").list.eval((item("qty") < 1) | (item("unit_price") < 0)).list.any())
        .then(pl.lit("minimum"))
        .when(pl.col("shipping").is_not_null()
              & (pl.col("shipping").struct.field("country").is_null()
                 | ~pl.col("shipping").struct.field("country").str.contains(r"^[A-Z]{2}$").fill_null(False)
                 | (pl.col("shipping").struct.field("postal_code").str.len_chars() > 16).fill_null(False)))
        .then(pl.lit("shipping"))
        .when(pl.col("ts") > now).then(pl.lit("not_in_future"))
    )
    classified = parsed.with_columns(reason=reason).collect()

    valid = classified.lazy().filter(pl.col("reason").is_null())
    customers_df = pl.scan_csv(customers).select("customer_id", "segment", "region")
    shaped = (
        valid.join(customers_df, on="customer_id", how="left")
        .with_columns(review=pl.when(pl.col("total_v") >= 50000).then(pl.lit("plausible_total"))
                      .when(pl.col("segment").is_null()).then(pl.lit("customers")))
        .select(
            "event_id", "event_type", pl.col("ts").alias("occurred_at"),
            pl.col("ts").dt.date().alias("event_date"), "order_id", "customer_id",
            pl.col("currency").str.to_uppercase(), "channel",
            pl.col("items_v").list.eval(item("qty")).list.sum().alias("item_count"),
            pl.col("total_v").alias("total"),
            (pl.col("total_v") * 100).round().cast(pl.Int64).alias("total_cents"),
            pl.col("shipping").struct.field("country").alias("ship_country"),
            "segment", "region", (pl.col("total_v") > 500).alias("is_high_value"),
            "review", "line",
        )
        .collect()
    )
    output = shaped.filter(pl.col("review").is_null()).drop("review", "line")
    output.write_parquet(f"{out}/orders", compression="zstd", partition_by=["event_date"])
    dlq = classified.filter(pl.col("reason").is_not_null()).select("line", "reason")
    dlq.write_ndjson(f"{out}/dlq.ndjson")
    review = shaped.filter(pl.col("review").is_not_null()).select("line", pl.col("review").alias("reason"))
    review.write_ndjson(f"{out}/review.ndjson")
    print(json.dumps({"out": output.height, "dlq": dlq.height, "review": review.height}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
