"""The studio's home screen: overview, counters, analytics, activity and limits."""
