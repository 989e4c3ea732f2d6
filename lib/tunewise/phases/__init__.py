"""What each phase does, without display code: run a phase's study (quick, focused),
validate the winner on fresh seeds, the post-mortem's figures, and the seed's advisor."""
