"""What each phase does, without display code: prepare and run a phase's study (in this
process or in worker processes), validate the winner on fresh seeds, the post-mortem's
numbers, and the seed's advisor. Figures and tables of them are tunewise/report."""
