"""qsmprep.workflows"""
