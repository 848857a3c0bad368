"""qsmprep.reports"""
