"""The pure core: scores, milestones, stages and growth as functions of events. No I/O, no clock."""
