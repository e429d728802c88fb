"""A network-namespace test bed for fenced.

``tests.bed.bed.Bed`` builds a client and a server namespace joined by a veth pair, starts
echo and DNS servers in the server namespace and runs probes as confined identities in the
client namespace. ``tests.bed.constants`` holds the addresses, ports and identities;
``tests.bed.fixtures`` provides the pytest fixture ``bed``. This module imports nothing so
that the server and probe processes start fast.
"""
