"""The note's agent allocators (section 4.2); ``[agents] allocator`` picks one.

``least_load`` (the default) gives a task to the agent with the smallest share of its
capacity in use; ``priority`` fills agents in their configured order, so the first
agent takes all the work it can and later ones absorb overflow.
"""
