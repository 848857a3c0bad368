"""qsmprep.atlas"""
