"""qsmprep.cli"""
