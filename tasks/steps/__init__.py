"""The steps of a row: submit, poll, download. The only Prefect task code."""
