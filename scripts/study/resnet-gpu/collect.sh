# whatever the study has written so far, without model weights, into $OUT
W=${W:-/work/resnet}
[ -d $W ] && tar czf $OUT/resnet.tgz -C $(dirname $W) --exclude=checkpoints --exclude=units --exclude=state $(basename $W)
cp /tmp/study.log $OUT/study.log 2>/dev/null
ls -la $OUT
