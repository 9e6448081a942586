"""Billing's pure decisions: invoice totals, the document, lag, the claim-check marker."""

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from samples.billing_worker.invoicing import (
    invoice_for,
    invoice_id_for,
    invoice_status,
    is_claim_checked,
    lag_ms,
)
from samples.events import InvoiceIssued
from samples.order_api.commands import CreateOrder, order_created

from .factories import order_body

NOW = datetime(2026, 1, 2, tzinfo=timezone.utc)


def _order(**changes):
    body = order_body("cust-1", 2)
    body.update(changes)
    return order_created(CreateOrder.model_validate(body), "o-1", NOW)


def test_invoice_totals() -> None:
    invoice = invoice_for(_order(), NOW)
    # 2 lines x 2 x 10.25 = 41.00; minus 1.50; plus 4.95 shipping.
    assert invoice.subtotal == Decimal("41.00")
    assert invoice.discount_total == Decimal("1.50")
    assert invoice.total == Decimal("44.45")
    assert invoice.invoice_id == invoice_id_for("o-1") == "INV-o-1"
    assert [line.amount for line in invoice.lines] == [Decimal("20.50"), Decimal("20.50")]
    assert "Total EUR" in invoice.document
    assert "44.45" in invoice.document


def test_invoice_json_round_trips_with_pascal_case_names() -> None:
    invoice = invoice_for(_order(), NOW)
    text = invoice.model_dump_json(by_alias=True)
    assert json.loads(text)["Total"] == 44.45
    assert InvoiceIssued.model_validate_json(text) == invoice


@given(
    st.lists(
        st.tuples(st.integers(1, 50), st.decimals("0", "999.99", places=2, allow_nan=False)),
        min_size=1,
        max_size=20,
    ),
    st.decimals("0", "50", places=2, allow_nan=False),
)
def test_total_is_lines_minus_discount_plus_shipping(lines, shipping) -> None:
    body = order_body()
    body["Products"] = [
        {"ProductId": f"P{i}", "Name": "n", "Quantity": q, "Price": str(p)}
        for i, (q, p) in enumerate(lines)
    ]
    body["Discounts"] = []
    body["Shipping"]["Cost"] = str(shipping)
    invoice = invoice_for(order_created(CreateOrder.model_validate(body), "o", NOW), NOW)
    assert invoice.total == sum((q * p for q, p in lines), Decimal(0)) + shipping
    assert invoice.total >= 0


def test_a_cancelled_orders_invoice_is_void_with_nothing_due() -> None:
    assert invoice_status("44.45", voided=False) == ("issued", "44.45")
    assert invoice_status("44.45", voided=True) == ("void", "0.00")


def test_lag_is_enqueue_to_commit_in_ms() -> None:
    assert lag_ms(NOW, NOW + timedelta(milliseconds=250)) == pytest.approx(250)
    assert lag_ms(None, NOW) is None
    assert lag_ms(NOW, NOW - timedelta(seconds=1)) == 0.0  # clock skew never goes negative


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({"IsClaimCheck": True}, True),
        ({b"IsClaimCheck": b"true"}, True),
        ({"IsClaimCheck": "True"}, True),
        ({"IsClaimCheck": "yes"}, False),
        ({"IsClaimCheck": False}, False),
        ({}, False),
    ],
)
def test_claim_check_marker(properties, expected) -> None:
    assert is_claim_checked(properties) is expected


@pytest.mark.parametrize(
    ("url", "postgres", "placeholder"),
    [
        ("billing.db", False, "?"),
        ("sqlite:///tmp/billing.db", False, "?"),
        ("postgresql://billing@db/billing", True, "%s"),
        ("postgres://billing@db/billing", True, "%s"),
        ("host=db port=5433 dbname=billing", True, "%s"),
    ],
)
def test_the_database_setting_chooses_the_store(url, postgres, placeholder) -> None:
    from samples.billing_worker.read_model import is_postgres, placeholder_for, sqlite_path

    assert is_postgres(url) is postgres
    assert placeholder_for(url) == placeholder
    if not postgres:
        assert sqlite_path(url).endswith("billing.db")
