"""The plugin SDK: what a data-source adapter, strategy or allocator imports."""
