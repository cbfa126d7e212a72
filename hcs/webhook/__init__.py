"""``hcs webhook``: AdmissionReview v1 validation and mutation of ``ai.compute/*`` requests over TLS.

Modules: ``config`` (the ``webhook`` config section), ``podspec`` (finding pod specs and their
``ai.compute`` requests), ``validate`` and ``mutate`` (pure policy), ``capacity`` (how big the largest
interconnect island is: allocator gRPC or ComputeNode objects), ``kube`` (cached API-server lookups),
``retarget`` (image retargeting, also used by the allocator), ``review`` (AdmissionReview in/out),
``server`` (HTTPS with certificate reload, health and metrics) and ``cli``.
"""
