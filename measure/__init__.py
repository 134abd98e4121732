"""`ferry bench`: a load generator and profiler for any KServe v2 server, and a config sweep."""
