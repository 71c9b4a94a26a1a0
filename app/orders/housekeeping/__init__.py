"""Scheduled housekeeping beside the orders: the `events` retention (old closed orders'
step-by-step events deleted in batches, their row, payments and money and shipment events
kept) and the statistics rollups kept small (workflow.py runs it, activities.py does it;
app/service/schedules.py keeps its Temporal Schedule in place)."""
