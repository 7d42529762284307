"""Loading and validating desired state: the pure stage between fetch and plan.

Nothing here touches Django, Git or a cluster: bytes go in, values or
``ValidationError`` lists come out.
"""
