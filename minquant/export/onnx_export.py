ONNX_FORMS = ("qdq", "integer")


def to_onnx(*a):
    raise NotImplementedError
