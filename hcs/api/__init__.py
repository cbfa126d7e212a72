"""Generated gRPC stubs live in ``hcs.api.gen`` (``make proto``); do not edit them by hand."""
