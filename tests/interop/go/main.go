// Interoperability checks of Agora's transparency log against Go's independent implementation
// (golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog). Built in GOPATH mode by
// crates/agora-cli/tests/tlog_interop.rs. Every subcommand prints OK lines or exits non-zero.
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "interop: "+format+"\n", args...)
	os.Exit(1)
}

func readFile(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		die("%v", err)
	}
	return b
}

func hash(s string) tlog.Hash {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != tlog.HashSize {
		die("bad hash %q", s)
	}
	var h tlog.Hash
	copy(h[:], b)
	return h
}

func atoi(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		die("bad number %q", s)
	}
	return n
}

// parseCheckpoint splits a C2SP checkpoint body (origin, size, root).
func parseCheckpoint(text string) (string, int64, tlog.Hash) {
	lines := strings.Split(text, "\n")
	if len(lines) < 4 {
		die("checkpoint body too short: %q", text)
	}
	return lines[0], atoi(lines[1]), hash(lines[2])
}

// openCheckpoint verifies a signed checkpoint with the log's vkey.
func openCheckpoint(vkey string, msg []byte) (string, int64, tlog.Hash) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		die("vkey: %v", err)
	}
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		die("note.Open: %v", err)
	}
	return parseCheckpoint(n.Text)
}

func proofLines(path string) []tlog.Hash {
	var out []tlog.Hash
	sc := bufio.NewScanner(strings.NewReader(string(readFile(path))))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, hash(l))
		}
	}
	return out
}

// c2spTiles reads tiles in the c2sp.org/tlog-tiles layout (no height element in the path).
type c2spTiles struct{ base string }

func (c c2spTiles) Height() int { return 8 }

func (c c2spTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	var out [][]byte
	for _, t := range tiles {
		// Go's path is tile/8/L/N[.p/W]; C2SP drops the height.
		p := strings.Replace(t.Path(), "tile/8/", "tile/", 1)
		resp, err := http.Get(c.base + "/" + p)
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("GET %s: %s", p, resp.Status)
		}
		out = append(out, b)
	}
	return out, nil
}

func (c c2spTiles) SaveTiles(tiles []tlog.Tile, data [][]byte) {}

func main() {
	if len(os.Args) < 2 {
		die("usage: interop <command> ...")
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "verify-checkpoint": // VKEY FILE
		origin, size, root := openCheckpoint(args[0], readFile(args[1]))
		fmt.Printf("OK %s %d %s\n", origin, size, root)
	case "check-inclusion": // SIZE ROOT INDEX LEAFHASH PROOFFILE
		p := tlog.RecordProof(proofLines(args[4]))
		if err := tlog.CheckRecord(p, atoi(args[0]), hash(args[1]), atoi(args[2]), hash(args[3])); err != nil {
			die("CheckRecord: %v", err)
		}
		fmt.Println("OK inclusion")
	case "check-consistency": // OLDSIZE OLDROOT NEWSIZE NEWROOT PROOFFILE
		p := tlog.TreeProof(proofLines(args[4]))
		if err := tlog.CheckTree(p, atoi(args[2]), hash(args[3]), atoi(args[0]), hash(args[1])); err != nil {
			die("CheckTree: %v", err)
		}
		fmt.Println("OK consistency")
	case "tiles": // URL VKEY OLDSIZE OLDROOT: verify the checkpoint, read the tiles, prove and check
		resp, err := http.Get(args[0] + "/checkpoint")
		if err != nil {
			die("%v", err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		_, size, root := openCheckpoint(args[1], msg)
		tree := tlog.Tree{N: size, Hash: root}
		r := tlog.TileHashReader(tree, c2spTiles{args[0]})
		th, err := tlog.TreeHash(size, r)
		if err != nil || th != root {
			die("TreeHash from tiles: %v %v != %v", err, th, root)
		}
		n := 0
		for _, i := range []int64{0, 1, size / 3, size / 2, size - 2, size - 1} {
			if i < 0 || i >= size {
				continue
			}
			p, err := tlog.ProveRecord(size, i, r)
			if err != nil {
				die("ProveRecord %d: %v", i, err)
			}
			leaves, err := r.ReadHashes([]int64{tlog.StoredHashIndex(0, i)})
			if err != nil {
				die("leaf %d: %v", i, err)
			}
			if err := tlog.CheckRecord(p, size, root, i, leaves[0]); err != nil {
				die("CheckRecord %d: %v", i, err)
			}
			n++
		}
		oldSize, oldRoot := atoi(args[2]), hash(args[3])
		tp, err := tlog.ProveTree(size, oldSize, r)
		if err != nil {
			die("ProveTree: %v", err)
		}
		if err := tlog.CheckTree(tp, size, root, oldSize, oldRoot); err != nil {
			die("CheckTree: %v", err)
		}
		fmt.Printf("OK tiles size=%d root=%s proofs=%d consistency-from=%d\n", size, root, n, oldSize)
	case "gen-key": // NAME
		skey, vkey, err := note.GenerateKey(rand.Reader, args[0])
		if err != nil {
			die("%v", err)
		}
		fmt.Println(skey)
		fmt.Println(vkey)
	case "sign": // SKEY FILE
		s, err := note.NewSigner(args[0])
		if err != nil {
			die("%v", err)
		}
		msg, err := note.Sign(&note.Note{Text: string(readFile(args[1]))}, s)
		if err != nil {
			die("%v", err)
		}
		os.Stdout.Write(msg)
	case "leaf-hash": // FILE
		fmt.Println(tlog.RecordHash(readFile(args[0])))
	default:
		die("unknown command %q", os.Args[1])
	}
}
