"""The billing service: invoices from orders (worker), and the query API over them."""
