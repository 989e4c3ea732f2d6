"""What people see: plotly charts (live and static, the post-mortem's ROI curve, the Pareto
front), HTML tables, the self-contained HTML report, and the search-space editor widgets."""
