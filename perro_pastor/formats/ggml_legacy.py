MAGICS = {}
def read_ggml(path):
    raise NotImplementedError
