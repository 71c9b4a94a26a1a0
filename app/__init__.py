"""Order fulfillment on Temporal."""
