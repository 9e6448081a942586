"""Order bodies for the samples' tests."""

from __future__ import annotations

import base64
from typing import Any


def address(name: str = "Ada") -> dict[str, Any]:
    return {
        "Name": name,
        "Street": "1 Main St",
        "City": "Utrecht",
        "PostalCode": "3511",
        "Country": "NL",
    }


def order_body(
    customer: str = "cust-1", lines: int = 2, *, attachment_bytes: int = 0
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "CustomerId": customer,
        "PaymentMethod": "PayPal",
        "Products": [
            {
                "ProductId": f"SKU-{i}",
                "Name": f"Product {i}",
                "Quantity": 2,
                "Price": 10.25,
                "Description": "x" * 100,
            }
            for i in range(lines)
        ],
        "BillingAddress": address(),
        "Shipping": {"Cost": 4.95, "Address": address()},
        "Discounts": [{"Code": "TEN", "Amount": 1.5}],
    }
    if attachment_bytes:
        body["Attachments"] = [
            {
                "FileName": "po.pdf",
                "ContentBase64": base64.b64encode(b"\x01" * attachment_bytes).decode(),
            }
        ]
    return body
