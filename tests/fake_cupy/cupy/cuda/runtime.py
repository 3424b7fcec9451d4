def getDeviceCount():  # noqa: N802 (CuPy's name)
    return 1


def getDeviceProperties(device):  # noqa: N802
    return {"name": b"fake cupy"}
