"""What people see: summaries, Prefect artifacts, the HTML report."""
