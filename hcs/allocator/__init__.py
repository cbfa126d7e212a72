"""The central allocator: inventory, reservations, placement policies, gRPC API, scheduler extender, replay."""
