"""provisioner: launches a dedicated cluster of EC2 instances per dedicated job.

Design notes: see ``README.md`` next to this file.
"""
