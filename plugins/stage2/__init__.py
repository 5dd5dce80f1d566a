"""The built-in Stage-2 backends (synfiqa.synthesis): ``folder`` (an identity's own photos)
and ``echo`` (its photos warped toward each planned pose, for tests and demos)."""
