def test_tiny(tiny_onnx):
    import onnx
    m = onnx.load(str(tiny_onnx))
    print([ (o.name, o.type.tensor_type.shape) for o in m.graph.output])
