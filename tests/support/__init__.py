"""Test support: fixtures that start real parts (Secret Service, agents, routers, X servers)."""
