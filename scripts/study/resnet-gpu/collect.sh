# whatever the study has written so far, without model weights, into $OUT; the test run's gen 0 and 2 weights in parts
W=${W:-/work/resnet}
[ -d $W ] && tar czf $OUT/resnet.tgz -C $(dirname $W) --exclude=checkpoints --exclude=units --exclude=state $(basename $W)
cp /tmp/study.log $OUT/study.log 2>/dev/null
if [ -d $W/test/checkpoints ]; then
  (cd $W/test/checkpoints && ls *gen0* *gen2* 2>/dev/null | split -n r/3 - /tmp/ck.)
  for part in /tmp/ck.a?; do tar cf $OUT/ckpt-$(basename $part).tar -C $W/test/checkpoints -T $part --dereference; done
fi
ls -la $OUT
