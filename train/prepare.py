"""placeholder"""
def run():
    print("ok")
