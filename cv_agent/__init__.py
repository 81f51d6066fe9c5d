"""The sample CV service agent, built on node's requester side."""
