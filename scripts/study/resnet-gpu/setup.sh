# sourced: the packages the device image lacks, and the data where kdgen's defaults look for it
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
mkdir -p /usr/share/datasets/fashion-mnist /work/data/package/data
cp .devicedata/fashion-mnist/* /usr/share/datasets/fashion-mnist/
cp .devicedata/mnist/* /work/data/package/data/
