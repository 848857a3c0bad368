"""qsmprep.dl"""
