"""Core ML export (`mlxedge export --to coreml`): weights.py carries the bundle's tensors as
constexpr ops, layers.py/builder.py build the decoder with the MIL builder, export.py writes the
package. Needs coremltools; imported only by the export command (mlxedge/export.py)."""
