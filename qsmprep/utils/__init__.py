"""Small helpers shared across qsmprep (file writing, GPU detection)."""
