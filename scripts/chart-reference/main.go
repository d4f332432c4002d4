// chart-reference renders the Helm chart the way Helm does, with the libraries Helm uses: Go's
// text/template, Sprig's functions and go-yaml v2 (through JSON, as sigs.k8s.io/yaml), plus
// Helm's include, tpl, toYaml, fromYaml, toJson and required, and Helm's value merging (chart
// values under -f files under --set, null deleting a default). It is the reference that the
// renderer built into `trellis` (cli/src/chart) is compared with: cli/tests/chart_render.rs
// builds and runs it when Go and Debian's Sprig are installed (scripts/chart-crosscheck.sh
// installs them).
//
//	chart-reference -chart charts/trellis -name trellis -namespace trellis-system \
//	    [-f values.yaml]... [-set a.b=c]...
//
// prints {"templates": {name: text}, "objects": {name: [object, ...]}} as JSON: each
// template's output and the objects parsed from it, or the rendering error on stderr (exit 1).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig/v3"
	"gopkg.in/yaml.v2"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	chartDir := flag.String("chart", "charts/trellis", "chart directory")
	name := flag.String("name", "trellis", "release name")
	namespace := flag.String("namespace", "trellis-system", "release namespace")
	var files, sets list
	flag.Var(&files, "f", "values file (repeatable)")
	flag.Var(&sets, "set", "a.b=c (repeatable)")
	flag.Parse()
	if err := run(*chartDir, *name, *namespace, files, sets); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(chartDir, name, namespace string, files, sets []string) error {
	meta := map[string]interface{}{}
	if err := readYAML(filepath.Join(chartDir, "Chart.yaml"), &meta); err != nil {
		return err
	}
	chart := map[string]interface{}{}
	for k, v := range meta {
		key := strings.ToUpper(k[:1]) + k[1:]
		if k == "apiVersion" {
			key = "APIVersion"
		}
		chart[key] = v
	}
	chartName, _ := meta["name"].(string)
	defaults := map[string]interface{}{}
	if err := readYAML(filepath.Join(chartDir, "values.yaml"), &defaults); err != nil {
		return err
	}
	user := map[string]interface{}{}
	for _, f := range files {
		m := map[string]interface{}{}
		if err := readYAML(f, &m); err != nil {
			return err
		}
		mergeMaps(user, m)
	}
	for _, s := range sets {
		if err := parseSet(s, user); err != nil {
			return fmt.Errorf("--set %s: %v", s, err)
		}
	}
	top := map[string]interface{}{
		"Values":  coalesce(user, defaults),
		"Release": map[string]interface{}{"Name": name, "Namespace": namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1},
		"Chart":   chart,
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.33.0", "Major": "1", "Minor": "33", "GitVersion": "v1.33.0"},
		},
	}

	// Helm's engine: one template set, Sprig's functions and Helm's own.
	t := template.New("gotpl").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var b strings.Builder
		err := t.ExecuteTemplate(&b, name, data)
		return b.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := t.Clone()
		if err != nil {
			return "", err
		}
		parsed, err := clone.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var b strings.Builder
		err = parsed.Execute(&b, data)
		return strings.ReplaceAll(b.String(), "<no value>", ""), err
	}
	funcs["toYaml"] = func(v interface{}) string {
		out, err := marshalYAML(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(out), "\n")
	}
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := unmarshalYAML([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["toJson"] = func(v interface{}) string {
		out, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(out)
	}
	funcs["required"] = func(warn string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, errors.New(warn)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, errors.New(warn)
		}
		return v, nil
	}
	t.Funcs(funcs)

	var names []string
	texts := map[string]string{}
	root := filepath.Join(chartDir, "templates")
	err := filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(chartDir, path)
		data, err := ioutil.ReadFile(path)
		if err != nil {
			return err
		}
		n := chartName + "/" + filepath.ToSlash(rel)
		names = append(names, n)
		texts[n] = string(data)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, n := range names {
		if _, err := t.New(n).Parse(texts[n]); err != nil {
			return err
		}
	}

	rendered := map[string]string{}
	objects := map[string][]interface{}{}
	for _, n := range names {
		if strings.HasPrefix(filepath.Base(n), "_") {
			continue
		}
		data := map[string]interface{}{}
		for k, v := range top {
			data[k] = v
		}
		data["Template"] = map[string]interface{}{"Name": n, "BasePath": chartName + "/templates"}
		var b strings.Builder
		if err := t.ExecuteTemplate(&b, n, data); err != nil {
			return err
		}
		text := strings.ReplaceAll(b.String(), "<no value>", "")
		rendered[n] = text
		objects[n] = []interface{}{}
		if strings.HasSuffix(n, "NOTES.txt") {
			continue
		}
		for _, doc := range splitManifests(text) {
			// Helm writes each document followed by a newline ("---\n# Source: ...\n%s\n"),
			// and Kubernetes reads that: a block scalar ending the document keeps its last
			// line break.
			var obj interface{}
			if err := unmarshalYAML([]byte(doc+"\n"), &obj); err != nil {
				return fmt.Errorf("%s: %v", n, err)
			}
			if obj != nil {
				objects[n] = append(objects[n], obj)
			}
		}
	}
	out, err := json.Marshal(map[string]interface{}{"templates": rendered, "objects": objects})
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}

var separator = regexp.MustCompile(`(?:^|\s*\n)---\s*`)

// Helm's releaseutil.SplitManifests.
func splitManifests(text string) []string {
	var docs []string
	for _, d := range separator.Split(strings.TrimSpace(text), -1) {
		if d = strings.TrimSpace(d); d != "" {
			docs = append(docs, d)
		}
	}
	return docs
}

// sigs.k8s.io/yaml's Marshal: through encoding/json, then go-yaml v2.
func marshalYAML(v interface{}) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var obj interface{}
	if err := yaml.Unmarshal(j, &obj); err != nil {
		return nil, err
	}
	return yaml.Marshal(obj)
}

// sigs.k8s.io/yaml's Unmarshal: go-yaml v2 to JSON, then encoding/json (numbers are float64).
func unmarshalYAML(data []byte, v interface{}) error {
	var obj interface{}
	if err := yaml.Unmarshal(data, &obj); err != nil {
		return err
	}
	j, err := json.Marshal(jsonable(obj))
	if err != nil {
		return err
	}
	return json.Unmarshal(j, v)
}

func jsonable(v interface{}) interface{} {
	switch v := v.(type) {
	case map[interface{}]interface{}:
		m := map[string]interface{}{}
		for k, item := range v {
			m[fmt.Sprint(k)] = jsonable(item)
		}
		return m
	case []interface{}:
		for i, item := range v {
			v[i] = jsonable(item)
		}
		return v
	}
	return v
}

func readYAML(path string, v interface{}) error {
	data, err := ioutil.ReadFile(path)
	if err != nil {
		return err
	}
	if err := unmarshalYAML(data, v); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	return nil
}

// Helm's mergeMaps (-f files): maps merge, the later value wins anything else.
func mergeMaps(dst, src map[string]interface{}) {
	for k, v := range src {
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				mergeMaps(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

// Helm's coalesce: user values over the chart's, null deleting a default.
func coalesce(user, defaults map[string]interface{}) map[string]interface{} {
	for k, dv := range defaults {
		uv, ok := user[k]
		switch {
		case !ok:
			user[k] = dv
		case uv == nil:
			delete(user, k)
		default:
			um, uok := uv.(map[string]interface{})
			dm, dok := dv.(map[string]interface{})
			if uok && dok {
				user[k] = coalesce(um, dm)
			}
		}
	}
	return user
}

// A subset of Helm's strvals (--set): a.b=c, comma-separated, \-escapes, name[i], {a,b} lists.
func parseSet(s string, into map[string]interface{}) error {
	for _, assignment := range splitUnescaped(s, ',', true) {
		eq := indexUnescaped(assignment, '=')
		if eq < 0 {
			return fmt.Errorf("key %q has no value", assignment)
		}
		key, raw := assignment[:eq], assignment[eq+1:]
		var value interface{}
		if strings.HasPrefix(raw, "{") && strings.HasSuffix(raw, "}") {
			items := []interface{}{}
			if inner := raw[1 : len(raw)-1]; inner != "" {
				for _, item := range splitUnescaped(inner, ',', false) {
					items = append(items, typed(unescape(item)))
				}
			}
			value = items
		} else {
			value = typed(unescape(raw))
		}
		parts := splitUnescaped(key, '.', false)
		node := into
		for i, part := range parts {
			part = unescape(part)
			last := i == len(parts)-1
			index := -1
			if open := strings.Index(part, "["); open > 0 && strings.HasSuffix(part, "]") {
				n, err := strconv.Atoi(part[open+1 : len(part)-1])
				if err != nil {
					return err
				}
				part, index = part[:open], n
			}
			if index >= 0 {
				l, _ := node[part].([]interface{})
				for len(l) <= index {
					l = append(l, nil)
				}
				node[part] = l
				if last {
					l[index] = value
					break
				}
				m, ok := l[index].(map[string]interface{})
				if !ok {
					m = map[string]interface{}{}
					l[index] = m
				}
				node = m
				continue
			}
			if last {
				node[part] = value
				break
			}
			m, ok := node[part].(map[string]interface{})
			if !ok {
				m = map[string]interface{}{}
				node[part] = m
			}
			node = m
		}
	}
	return nil
}

// strvals' typedVal.
func typed(v string) interface{} {
	switch {
	case strings.EqualFold(v, "true"):
		return true
	case strings.EqualFold(v, "false"):
		return false
	case strings.EqualFold(v, "null"):
		return nil
	case v == "0":
		return int64(0)
	}
	if v != "" && v[0] != '0' {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return n
		}
	}
	return v
}

// Splits on sep outside backslash escapes (and, when braces is set, outside {...}), keeping
// the escapes for unescape.
func splitUnescaped(s string, sep byte, braces bool) []string {
	var parts []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\':
			i++
		case braces && s[i] == '{':
			depth++
		case braces && s[i] == '}':
			depth--
		case s[i] == sep && depth == 0:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

func indexUnescaped(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
		} else if s[i] == c {
			return i
		}
	}
	return -1
}

func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
