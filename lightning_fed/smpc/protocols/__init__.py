"""Protocols on :class:`~lightning_fed.smpc.parties.Shares`: Beaver products and truncation (:mod:`.arithmetic`),
comparison by arithmetic-to-binary conversion (:mod:`.binary`). Pure orchestration: every step runs at the workers."""
