"""qsmprep.interfaces"""
