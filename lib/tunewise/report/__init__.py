"""What people see: plotly charts (live and static), HTML tables, the self-contained HTML
report, and the search-space editor widgets."""
