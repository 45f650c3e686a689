"""Analysis: ingest-time rollups and the answers built on them.

Download estimates, rankings, time-lapse frames and exports, all k-anonymous.
"""
