"""The kernel side: nf_tables over netlink and ``nft``, conntrack, and the cgroup tree.

Each module talks to one kernel interface and turns its failures into typed
``fenced.errors`` exceptions; what to write comes from ``fenced.core`` values.
"""
