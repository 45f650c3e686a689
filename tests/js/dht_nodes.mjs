// Real bittorrent-dht nodes on loopback for swarmwatch's interoperability test.
// argv: bootstrap "h:p,h:p" · infohash hex · count · first host octet · first announce port
// Prints one JSON line per event; exits when stdin closes (the test ends).
import DHT from 'bittorrent-dht'

const [bootstrapArg, infoHash, countArg, octetArg, portArg] = process.argv.slice(2)
const bootstrap = bootstrapArg.split(',')
const count = Number(countArg)
const nodes = []
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

for (let i = 0; i < count; i++) {
  const host = `127.0.0.${Number(octetArg) + i}`
  const dht = new DHT({ bootstrap, host })
  nodes.push(dht)
  dht.on('error', (err) => say({ error: String(err && err.message) }))
  dht.on('get_peers', () => say({ get_peers: i }))
  dht.listen(0, host, () => {
    say({ listening: i, host, dht_port: dht.address().port })
  })
  dht.on('ready', () => {
    const port = Number(portArg) + i
    dht.announce(infoHash, port, (err) => {
      say({ announced: i, host, port, error: err ? String(err.message) : null })
    })
  })
}

process.stdin.resume()
process.stdin.on('end', () => {
  for (const dht of nodes) dht.destroy()
  process.exit(0)
})
