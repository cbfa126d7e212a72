"""``hcs demo``: the whole stack on one machine, on simulated mixed-vendor hardware."""
