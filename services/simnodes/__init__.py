"""simnodes: a simulated fleet publishing ``node.status.<node_id>`` like real node agents."""
